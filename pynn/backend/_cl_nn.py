"""OpenCL ops of the activation, pooling, dropout, loss, metric and optimizer families.

The host side of ``opencl/{activation,pool,dropout,loss,metric,optim}.cl``; each function has
the name and parameter list of ``pynn.backend.api.OPS`` and the semantics of its CPU twin in
``native/*.pyx``. Host code only validates, allocates from the runtime's pool and enqueues:
every element is computed on the device and only scalars (losses, counts, norms) come back.

Arrays: ``pyopencl.array.Array``, float32 (int32 labels/argmax, uint8 masks), C-contiguous at
offset 0, on the current context; host arrays are refused (TypeError naming ``asarray``, the
one upload point). Sizes are int32 on the device: an array of 2**31 or more elements is
refused.

Reductions are two-stage and deterministic (opencl/wg_reduce.h): at most ``MAX_GROUPS``
work-groups, a count fixed by the size alone, then one group, no float atomics; the same
inputs give the same bits on every run. They accumulate in float32 (fp64 is optional in
OpenCL), where the CPU accumulates in double: losses and norms agree to ~1e-6 relative.

Where the CPU raises after looking at the data, the device answers without a host round
trip when it can: a sparse label outside [0, K) sets a flag read back with the loss or count
(same ValueError as the CPU); an argmax outside its plane in a pooling backward op is skipped
in the kernel (never followed), since reporting it would stall every training step.
"""

import math
import operator

import numpy as np

from pynn.backend import _cl_runtime as rt
from pynn.backend._validate import (
    activation_name, conv_output_size, huber_delta, padding_mode, pair,
)
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, LOSSES

try:
    import pyopencl.array as cl_array
except ImportError:  # pragma: no cover - the runtime reports the missing driver
    cl_array = None

WG = 256  # WG_SIZE of opencl/common.h: elementwise and reduction work-groups
ROW_WG = 64  # SOFTMAX_WG / LOSS_ROW_WG of activation.cl / loss.cl: one group per row
MAX_GROUPS = 256  # stage-1 work-groups of a scalar reduction
_INT32_MAX = 2**31 - 1


# -- argument checks ------------------------------------------------------------------------


def _is_device(a):
    return cl_array is not None and isinstance(a, cl_array.Array)


def _check_count(op, name, n):
    if n > _INT32_MAX:
        raise ValueError(f"{op}: '{name}' has {n} elements; the OpenCL kernels index with "
                         f"int32 (at most {_INT32_MAX})")


def _input(op, name, a, dtype=np.float32):
    """A read-only operand: a C-contiguous device array of ``dtype`` at offset 0 on the
    current context. Host data is a TypeError naming ``asarray`` (the one upload point, as in
    ``pynn.backend.opencl``): an op never moves a batch behind the caller's back."""
    dtype = np.dtype(dtype)
    if a is None:
        raise ValueError(f"{op}: '{name}' is required, got None")
    if not _is_device(a):
        raise TypeError(f"{op}: '{name}' must be a pyopencl.array.Array on the OpenCL device "
                        f"(upload with backend.asarray), got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{op}: '{name}' must have dtype {dtype}, got {a.dtype}")
    if not a.flags.c_contiguous or a.offset:
        raise ValueError(f"{op}: '{name}' must be C-contiguous without offset (copy it "
                         f"first), got strides {a.strides}")
    if a.context != rt.context():
        raise ValueError(f"{op}: '{name}' lives on another OpenCL context than the current "
                         f"device {rt.device_info()['index']}")
    _check_count(op, name, a.size)
    return a


def _inplace(op, name, a, like=None):
    """An array updated in place: as ``_input`` (float32), shaped like ``like`` when given
    and sharing no buffer with it."""
    _input(op, name, a)
    if like is not None:
        if a.shape != like.shape:
            raise ValueError(f"{op}: '{name}' must have the shape {like.shape}, got {a.shape}")
        if a.size and a.base_data is like.base_data:
            raise ValueError(f"{op}: '{name}' must not share memory with the parameter")
    return a


def _same_shape(op, name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: '{name}' must have the shape {tuple(shape)}, got {a.shape}")


def _number(op, name, value, lo=None, hi=None, hi_open=False, allow_nan=False):
    """A finite real in [lo, hi] (or [lo, hi)); the checks of native/optim.pyx."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}") from None
    if math.isnan(x):
        if allow_nan:
            return x
        raise ValueError(f"{op}: '{name}' must not be NaN")
    if math.isinf(x) and not allow_nan:
        raise ValueError(f"{op}: '{name}' must be finite, got {x}")
    if (lo is not None and x < lo) or (hi is not None and (x > hi or (hi_open and x == hi))):
        rb = ")" if hi_open else "]"
        raise ValueError(f"{op}: '{name}' must be in [{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{rb}, got {x}")
    return x


def _u64(op, name, value):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}") from None
    if not 0 <= v < 2**64:
        raise ValueError(f"{op}: '{name}' must be in [0, 2**64), got {v}")
    return v


# -- launching ------------------------------------------------------------------------------


_sizes_by_device = {}


def _sizes():
    """(wg, row_wg) for the current device: WG and ROW_WG capped by its work-group limit,
    kept powers of two as the tree reductions need."""
    dev = rt.device()
    sizes = _sizes_by_device.get(dev)
    if sizes is None:
        limit = int(rt.device_info()["max_work_group_size"])
        cap = 1 << (limit.bit_length() - 1)
        sizes = _sizes_by_device[dev] = (min(WG, cap), min(ROW_WG, cap))
    return sizes


def _kernel(stem, name):
    """A kernel of this family, built with the group sizes of ``_sizes`` (the .cl defaults
    unless the device is smaller)."""
    wg, row = _sizes()
    defines = None
    if (wg, row) != (WG, ROW_WG):
        defines = {"WG_SIZE": wg, "SOFTMAX_WG": row, "LOSS_ROW_WG": row}
    return rt.kernel(stem, name, defines)


def _elementwise(stem, name, n, *args):
    """One work-item per element; kernels guard the rounded-up tail."""
    rt.launch(_kernel(stem, name), (n,), (_sizes()[0],), *args)


def _groups(n):
    """Stage-1 work-groups of a scalar reduction over n items: fixed by n alone."""
    return max(1, min(MAX_GROUPS, -(-n // _sizes()[0])))


def _reduce(stem, stage_kernel, n, args, counts=1, dtype=np.float32, out=None):
    """Run a stage-1 kernel over n items (``_PARTIAL`` in ``args`` marks its partial buffer)
    and fold its partials: the device array of ``counts`` results (or ``out``, whose first
    ``counts`` entries receive them)."""
    groups, wg = _groups(n), _sizes()[0]
    partial = rt.empty((counts * groups,), dtype, what=f"{stage_kernel} partials")
    rt.launch(_kernel(stem, stage_kernel), (groups * wg,), (wg,),
              *[partial if a is _PARTIAL else a for a in args])
    return _fold(stem, partial, counts, dtype, out)


def _fold(stem, partial, counts=1, dtype=np.float32, out=None):
    """Stage 2: work-group c folds segment c of ``partial`` into out[c]."""
    if out is None:
        out = rt.empty((counts,), dtype, what="reduction result")
    name = "sum_partials_float" if np.dtype(dtype) == np.float32 else "sum_partials_int"
    wg = _sizes()[0]
    rt.launch(_kernel(stem, name), (counts * wg,), (wg,), partial, out,
              partial.size // counts)
    return out


_PARTIAL = object()  # placeholder for the partial buffer in a stage-1 argument list


# -- activations (opencl/activation.cl) -----------------------------------------------------


def _check_alpha(op, name, alpha):
    a = 0.0 if alpha is None else _number(op, "alpha", alpha)
    # Backward reads the branch from the sign of y: only the sign of x while alpha >= 0.
    if name in ("leaky_relu", "elu") and a < 0:
        raise ValueError(f"{op}: {name} needs alpha >= 0, got {a}")
    return a


def _softmax_rows(a):
    k = a.shape[a.ndim - 1]
    return a.size // k, k


def activation_forward(x, activation, alpha=0.0):
    """y = activation(x), same shape as x (softmax over the last axis)."""
    op = "activation_forward"
    name = activation_name(op, activation)
    a = _check_alpha(op, name, alpha)
    x = _input(op, "x", x)
    if name == "softmax" and x.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {x.shape}")
    y = rt.empty(x.shape, what=f"{op} output")
    if x.size == 0:
        return y
    if name == "softmax":
        rows, k = _softmax_rows(x)
        row_wg = _sizes()[1]
        rt.launch(_kernel("activation", "softmax_forward"), (rows * row_wg,), (row_wg,), x, y,
                  rows, k)
    else:
        _elementwise("activation", "activation_forward", x.size, x, y, x.size,
                     ACTIVATIONS.index(name), a)
    return y


def _backward_operands(op, dy, x, y, activation, alpha):
    """The checks of activation_backward -> (name, alpha, dy, x, y); x and y may be None
    where the activation does not read them."""
    name = activation_name(op, activation)
    a = _check_alpha(op, name, alpha)
    dy = _input(op, "dy", dy)
    needs_x = name in ACTIVATIONS_NEEDING_INPUT
    if x is None and needs_x:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'x', got None")
    if y is None and not needs_x:
        raise ValueError(f"{op}: 'y' (the forward output) is required for '{name}', got None")
    if x is not None:
        x = _input(op, "x", x)
        _same_shape(op, "x", x, dy.shape)
    if y is not None:
        y = _input(op, "y", y)
        _same_shape(op, "y", y, dy.shape)
    if name == "softmax" and dy.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {dy.shape}")
    return name, a, dy, x, y


def activation_backward(dy, x, y, activation, alpha=0.0):
    """dL/dx from dL/dy; ``y`` is the forward output, ``x`` the pre-activation (needed by
    gelu only, otherwise checked when given)."""
    op = "activation_backward"
    name, a, dy, x, y = _backward_operands(op, dy, x, y, activation, alpha)
    dx = rt.empty(dy.shape, what=f"{op} output")
    if dy.size == 0:
        return dx
    if name == "softmax":
        rows, k = _softmax_rows(dy)
        row_wg = _sizes()[1]
        rt.launch(_kernel("activation", "softmax_backward"), (rows * row_wg,), (row_wg,), dy,
                  y, dx, rows, k)
        return dx
    # The kernel reads x only for gelu and y only for the others: the unused one may alias.
    _elementwise("activation", "activation_backward", dy.size, dy,
                 x if x is not None else y, y if y is not None else x, dx, dy.size,
                 ACTIVATIONS.index(name), a)
    return dx


# -- pooling (opencl/pool.cl) ---------------------------------------------------------------


def _nhwc(op, name, a, dtype=np.float32):
    a = _input(op, name, a, dtype)
    if a.ndim != 4:
        raise ValueError(f"{op}: '{name}' must have 4 dimensions (N, H, W, C), got shape "
                         f"{a.shape}")
    return a


def _input_shape(op, input_shape):
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'input_shape' must be a tuple of 4 ints, got "
                         f"{input_shape!r}") from None
    if len(shape) != 4 or any(s < 0 for s in shape):
        raise ValueError(f"{op}: 'input_shape' must be 4 non-negative ints (N, H, W, C), got "
                         f"{input_shape!r}")
    _check_count(op, "input_shape", int(np.prod(shape, dtype=np.int64)))
    return shape


def _pool_geometry(op, h, w, pool_size, strides, padding):
    """(PH, PW, SH, SW, PT, PL, HO, WO) with Keras's rules; the layer resolves strides=None."""
    ph, pw = pair(op, "pool_size", pool_size)
    sh, sw = pair(op, "strides", strides)
    mode = padding_mode(op, padding)
    pt, ho = conv_output_size(h, ph, sh, 1, mode)
    pl, wo = conv_output_size(w, pw, sw, 1, mode)
    return ph, pw, sh, sw, pt, pl, ho, wo


def maxpool2d_forward(x, pool_size, strides, padding="valid"):
    """(N,H,W,C) -> (y (N,HO,WO,C), argmax int32 h*W + w within each (n, c) plane)."""
    op = "maxpool2d_forward"
    x = _nhwc(op, "x", x)
    n, h, w, c = x.shape
    ph, pw, sh, sw, pt, pl, ho, wo = _pool_geometry(op, h, w, pool_size, strides, padding)
    y = rt.empty((n, ho, wo, c), what=f"{op} output")
    argmax = rt.empty((n, ho, wo, c), np.int32, what=f"{op} argmax")
    _elementwise("pool", "maxpool2d_forward", y.size, x, y, argmax, n, h, w, c, ho, wo,
                 ph, pw, sh, sw, pt, pl)
    return y, argmax


def maxpool2d_backward(dy, argmax, input_shape):
    """dx (input_shape): each dy added to the input pixel its argmax names."""
    op = "maxpool2d_backward"
    dy = _nhwc(op, "dy", dy)
    argmax = _nhwc(op, "argmax", argmax, np.int32)
    _same_shape(op, "argmax", argmax, dy.shape)
    n, h, w, c = _input_shape(op, input_shape)
    if dy.shape[0] != n or dy.shape[3] != c:
        raise ValueError(f"{op}: dy {dy.shape} does not match input_shape {(n, h, w, c)} in "
                         f"batch or channels")
    if dy.size == 0:
        return rt.zeros((n, h, w, c), what=f"{op} output")
    if h * w == 0:
        raise ValueError(f"{op}: argmax points into an empty input of shape {(n, h, w, c)}")
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    # One work-item per (n, c) plane: it clears its plane and adds in a fixed order.
    _elementwise("pool", "maxpool2d_backward", n * c, dy, argmax, dx, n, h, w, c,
                 dy.shape[1], dy.shape[2])
    return dx


def avgpool2d_forward(x, pool_size, strides, padding="valid"):
    """(N,H,W,C) -> (N,HO,WO,C); 'same' averages the in-bounds pixels only."""
    op = "avgpool2d_forward"
    x = _nhwc(op, "x", x)
    n, h, w, c = x.shape
    ph, pw, sh, sw, pt, pl, ho, wo = _pool_geometry(op, h, w, pool_size, strides, padding)
    y = rt.empty((n, ho, wo, c), what=f"{op} output")
    _elementwise("pool", "avgpool2d_forward", y.size, x, y, n, h, w, c, ho, wo, ph, pw,
                 sh, sw, pt, pl)
    return y


def avgpool2d_backward(dy, input_shape, pool_size, strides, padding="valid"):
    op = "avgpool2d_backward"
    dy = _nhwc(op, "dy", dy)
    n, h, w, c = _input_shape(op, input_shape)
    ph, pw, sh, sw, pt, pl, ho, wo = _pool_geometry(op, h, w, pool_size, strides, padding)
    _same_shape(op, "dy", dy, (n, ho, wo, c))
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    _elementwise("pool", "avgpool2d_backward", dx.size, dy, dx, n, h, w, c, ho, wo, ph, pw,
                 sh, sw, pt, pl)
    return dx


def _check_plane(op, shape):
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{op}: global pooling needs H, W >= 1, got input shape {shape}")


def global_avgpool2d_forward(x):
    """(N,H,W,C) -> (N,C) mean over H and W."""
    op = "global_avgpool2d_forward"
    x = _nhwc(op, "x", x)
    _check_plane(op, x.shape)
    n, h, w, c = x.shape
    y = rt.empty((n, c), what=f"{op} output")
    _elementwise("pool", "global_avgpool2d_forward", y.size, x, y, n, h, w, c,
                 np.float32(1.0 / (h * w)))
    return y


def global_avgpool2d_backward(dy, input_shape):
    op = "global_avgpool2d_backward"
    dy = _input(op, "dy", dy)
    n, h, w, c = _input_shape(op, input_shape)
    _check_plane(op, (n, h, w, c))
    _same_shape(op, "dy", dy, (n, c))
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    _elementwise("pool", "global_avgpool2d_backward", dx.size, dy, dx, n, h, w, c,
                 np.float32(1.0 / (h * w)))
    return dx


def global_maxpool2d_forward(x):
    """(N,H,W,C) -> (y (N,C), argmax int32 (N,C) holding h*W + w)."""
    op = "global_maxpool2d_forward"
    x = _nhwc(op, "x", x)
    _check_plane(op, x.shape)
    n, h, w, c = x.shape
    y = rt.empty((n, c), what=f"{op} output")
    argmax = rt.empty((n, c), np.int32, what=f"{op} argmax")
    _elementwise("pool", "global_maxpool2d_forward", y.size, x, y, argmax, n, h, w, c)
    return y, argmax


def global_maxpool2d_backward(dy, argmax, input_shape):
    op = "global_maxpool2d_backward"
    dy = _input(op, "dy", dy)
    argmax = _input(op, "argmax", argmax, np.int32)
    n, h, w, c = _input_shape(op, input_shape)
    _check_plane(op, (n, h, w, c))
    _same_shape(op, "dy", dy, (n, c))
    _same_shape(op, "argmax", argmax, (n, c))
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    _elementwise("pool", "global_maxpool2d_backward", dx.size, dy, argmax, dx, n, h, w, c)
    return dx


# -- dropout (opencl/dropout.cl) ------------------------------------------------------------


def _rate(op, rate):
    if isinstance(rate, (bool, np.bool_)):
        raise TypeError(f"{op}: 'rate' must be a number, got {rate!r}")
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'rate' must be a number, got {rate!r}") from None
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{op}: 'rate' must be in [0, 1), got {rate!r}")
    return r


def _dropout_threshold(rate):
    # native/dropout.pyx step 4: floor(rate * 2^32), exact in double.
    return np.uint32(math.floor(rate * 4294967296.0))


def dropout_forward(x, rate, seed, offset=0):
    """Inverted dropout -> (y, mask uint8); the mask is bit-identical to the CPU op's."""
    op = "dropout_forward"
    r = _rate(op, rate)
    seed = _u64(op, "seed", seed)
    offset = _u64(op, "offset", offset)
    x = _input(op, "x", x)
    y = rt.empty(x.shape, what=f"{op} output")
    mask = rt.empty(x.shape, np.uint8, what=f"{op} mask")
    _elementwise("dropout", "dropout_forward", x.size, x, y, mask, x.size, np.uint64(seed),
                 np.uint64(offset), _dropout_threshold(r), np.float32(1.0 / (1.0 - r)))
    return y, mask


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate)."""
    op = "dropout_backward"
    r = _rate(op, rate)
    dy = _input(op, "dy", dy)
    if _is_device(mask) and mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    mask = _input(op, "mask", mask, np.uint8)
    _same_shape(op, "mask", mask, dy.shape)
    dx = rt.empty(dy.shape, what=f"{op} output")
    _elementwise("dropout", "dropout_backward", dy.size, dy, mask, dx, dy.size,
                 np.float32(1.0 / (1.0 - r)))
    return dx


def philox4x32_10_block(counter, key):
    """Random123's philox4x32_R(10, counter, key) run on the device (known-answer tests)."""
    c = [int(v) for v in counter]
    k = [int(v) for v in key]
    if len(c) != 4 or len(k) != 2 or not all(0 <= v < 2**32 for v in c + k):
        raise ValueError("philox4x32_10_block: expected 4 counter and 2 key uint32 words, "
                         f"got counter={counter!r}, key={key!r}")
    ctr = rt.to_device(np.array(c, dtype=np.uint32))
    out = rt.empty((4,), np.uint32, what="philox block")
    rt.launch(_kernel("dropout", "philox4x32_10_block"), (1,), None, ctr, out, 1,
              np.uint32(k[0]), np.uint32(k[1]))
    return tuple(int(v) for v in out.get())


# -- regularizers, norms, optimizer updates (opencl/optim.cl) -------------------------------


def sum_squares(a):
    """sum(a**2) over every element as a Python float (deterministic tree, float32)."""
    op = "sum_squares"
    a = _input(op, "a", a)
    if a.size == 0:
        return 0.0
    out = _reduce("optim", "sum_squares_partial", a.size, (a, _PARTIAL, a.size))
    return float(out.get()[0])


def regularizer_inplace(w, grad, l1, l2):
    """grad += l1*sign(w) + 2*l2*w (IN/OUT grad); returns l1*sum|w| + l2*sum(w**2)."""
    op = "regularizer_inplace"
    l1 = _number(op, "l1", l1, lo=0.0)
    l2 = _number(op, "l2", l2, lo=0.0)
    w = _input(op, "w", w)
    _inplace(op, "grad", grad)
    _same_shape(op, "grad", grad, w.shape)
    if grad.size and grad.base_data is w.base_data:
        raise ValueError(f"{op}: 'grad' must not share memory with 'w'")
    if (l1 == 0.0 and l2 == 0.0) or w.size == 0:
        return 0.0
    out = _reduce("optim", "regularizer_partial", w.size, (w, grad, _PARTIAL, w.size, l1, l2))
    return float(out.get()[0])


def _update_args(op, w, g, lr, grad_scale, clipvalue, weight_decay):
    """Common checks of the *_update ops -> (g, lr, scale, clip, decay*lr)."""
    _inplace(op, "w", w)
    g = _input(op, "g", g)
    _same_shape(op, "g", g, w.shape)
    lr = _number(op, "lr", lr)
    # grad_scale may be NaN: a non-finite global norm poisons the step, as in Keras.
    scale = _number(op, "grad_scale", grad_scale, lo=0.0, allow_nan=True)
    clip = _number(op, "clipvalue", clipvalue)
    decay = _number(op, "weight_decay", weight_decay, lo=0.0)
    return g, lr, scale, clip, decay * lr


def _slots_distinct(op, **slots):
    named = [(n, a) for n, a in slots.items() if a is not None and a.size]
    for i, (ni, ai) in enumerate(named):
        for nj, aj in named[i + 1:]:
            if ai.base_data is aj.base_data:
                raise ValueError(f"{op}: '{ni}' and '{nj}' must not share memory")


def sgd_update(w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
               weight_decay):
    """SGD step in place (Keras 3): m = momentum*m - lr*g; w += m (nesterov:
    w += momentum*m - lr*g); without momentum_buf w -= lr*g."""
    op = "sgd_update"
    g, lr, scale, clip, decay = _update_args(op, w, g, lr, grad_scale, clipvalue,
                                             weight_decay)
    if momentum_buf is not None:
        _inplace(op, "momentum_buf", momentum_buf, like=w)
    momentum = _number(op, "momentum", momentum, lo=0.0)
    if momentum != 0.0 and momentum_buf is None:
        raise ValueError(f"{op}: momentum={momentum} needs a 'momentum_buf' slot, got None")
    buf = w if momentum_buf is None else momentum_buf
    _elementwise("optim", "sgd_update", w.size, w, g, buf, w.size, momentum_buf is not None,
                 bool(nesterov), lr, momentum, scale, clip, decay)


def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                weight_decay):
    """Adam/AdamW step in place; vhat given means amsgrad. t is the 1-based step."""
    op = "adam_update"
    g, lr, scale, clip, decay = _update_args(op, w, g, lr, grad_scale, clipvalue,
                                             weight_decay)
    if m is None or v is None:
        raise ValueError(f"{op}: slots 'm' and 'v' are required, got m={type(m).__name__}, "
                         f"v={type(v).__name__}")
    _inplace(op, "m", m, like=w)
    _inplace(op, "v", v, like=w)
    if vhat is not None:
        _inplace(op, "vhat", vhat, like=w)
    _slots_distinct(op, m=m, v=v, vhat=vhat)
    beta_1 = _number(op, "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
    beta_2 = _number(op, "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"{op}: 't' must be an int >= 1 (the 1-based step), got {t!r}")
    # float32 rounding of the betas as Keras (and the CPU kernel) form it: exact double math
    # would differ from both by ~1e-5 relative in the first steps.
    f32 = np.float32
    alpha = float(f32(lr) * np.sqrt(f32(1) - f32(float(f32(beta_2)) ** int(t)))
                  / (f32(1) - f32(float(f32(beta_1)) ** int(t))))
    _elementwise("optim", "adam_update", w.size, w, g, m, v, w if vhat is None else vhat,
                 w.size, vhat is not None, alpha, 1.0 - beta_1, 1.0 - beta_2, epsilon, scale,
                 clip, decay)


def rmsprop_update(w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
                   grad_scale, clipvalue, weight_decay):
    """RMSprop step in place (Keras 3, epsilon inside the square root); average_grad given
    means centered, momentum_buf given means momentum."""
    op = "rmsprop_update"
    g, lr, scale, clip, decay = _update_args(op, w, g, lr, grad_scale, clipvalue,
                                             weight_decay)
    if velocity is None:
        raise ValueError(f"{op}: slot 'velocity' is required, got None")
    _inplace(op, "velocity", velocity, like=w)
    for name, slot in (("momentum_buf", momentum_buf), ("average_grad", average_grad)):
        if slot is not None:
            _inplace(op, name, slot, like=w)
    _slots_distinct(op, velocity=velocity, momentum_buf=momentum_buf,
                    average_grad=average_grad)
    rho = _number(op, "rho", rho, lo=0.0, hi=1.0)
    momentum = _number(op, "momentum", momentum, lo=0.0)
    if momentum > 0.0 and momentum_buf is None:
        raise ValueError(f"{op}: momentum={momentum} needs a 'momentum_buf' slot, got None")
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    _elementwise("optim", "rmsprop_update", w.size, w, g, velocity,
                 w if momentum_buf is None else momentum_buf,
                 w if average_grad is None else average_grad, w.size,
                 momentum_buf is not None, average_grad is not None, lr, rho, 1.0 - rho,
                 momentum, epsilon, scale, clip, decay)


def adagrad_update(w, g, accumulator, lr, epsilon, grad_scale, clipvalue, weight_decay):
    """Adagrad step in place: acc += g*g; w -= lr*g/sqrt(acc + epsilon)."""
    op = "adagrad_update"
    g, lr, scale, clip, decay = _update_args(op, w, g, lr, grad_scale, clipvalue,
                                             weight_decay)
    if accumulator is None:
        raise ValueError(f"{op}: slot 'accumulator' is required, got None")
    _inplace(op, "accumulator", accumulator, like=w)
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    _elementwise("optim", "adagrad_update", w.size, w, g, accumulator, w.size, lr, epsilon,
                 scale, clip, decay)


# -- losses (opencl/loss.cl) ----------------------------------------------------------------

_LOSS_HUBER = LOSSES.index("huber")
_LOSS_CCE = LOSSES.index("categorical_crossentropy")
_LOSS_SCCE = LOSSES.index("sparse_categorical_crossentropy")
KERAS_EPSILON = 1e-7


def _match_target_shape(op, y_true, y_pred):
    """y_true viewed with y_pred's shape, accepting Keras's squeeze_or_expand_to_same_rank
    case (ranks differ by one and the longer shape ends in 1), as native/loss.pyx does."""
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if ts == ps:
        return y_true
    if (len(ts) == len(ps) + 1 and ts[-1] == 1 and ts[:-1] == ps) or (
        len(ps) == len(ts) + 1 and ps[-1] == 1 and ps[:-1] == ts
    ):
        return y_true.reshape(ps)
    raise ValueError(f"{op}: 'y_true' must have the shape of 'y_pred' {ps}, got {ts}")


def _sparse_labels(op, y_true, lead_shape, k):
    """int32 device labels of shape lead_shape or lead_shape + (1,), viewed flat. Their range
    [0, k) is checked by the kernels, which flag a bad label instead of reading past a row."""
    labels = _input(op, "y_true", y_true, np.int32)
    lead_shape = tuple(lead_shape)
    if labels.shape != lead_shape and labels.shape != lead_shape + (1,):
        raise ValueError(f"{op}: sparse 'y_true' must have shape {lead_shape} or "
                         f"{lead_shape + (1,)} for y_pred with {k} classes, got {labels.shape}")
    return labels.reshape(labels.size)


def loss_forward_backward(name, y_true, y_pred, from_logits=False, param=None,
                          need_grad=True):
    """-> (mean loss: float, grad or None); grad = d(mean loss)/d(y_pred) shaped like y_pred.
    ``param`` is huber's delta (None: 1.0). One fused pass plus one fold; the loss (and, for
    sparse labels, a bad-label flag) is the only read-back."""
    op = "loss_forward_backward"
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"{op}: unknown loss {name!r}; expected one of {LOSSES}")
    code = LOSSES.index(name)
    from_logits = bool(from_logits)
    need_grad = bool(need_grad)
    delta = huber_delta(op, param) if code == _LOSS_HUBER else 0.0
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = _input(op, "y_pred", y_pred)
    if y_pred.ndim < 1:
        raise ValueError(f"{op}: 'y_pred' must have at least 1 dimension, got shape ()")
    k = y_pred.shape[-1]
    if code == _LOSS_SCCE:
        labels = _sparse_labels(op, y_true, y_pred.shape[:-1], k)
    else:
        y_true = _match_target_shape(op, _input(op, "y_true", y_true), y_pred)
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    if y_pred.size == 0:
        return 0.0, grad
    # Keras clips in y_pred's dtype: eps and 1 - eps rounded to float32.
    lo, hi = np.float32(KERAS_EPSILON), np.float32(1.0 - KERAS_EPSILON)
    if code in (_LOSS_CCE, _LOSS_SCCE):
        rows = y_pred.size // k
        sparse = code == _LOSS_SCCE
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        result = rt.zeros((2,), what=f"{op} result")  # [loss sum, bad-label flag]
        row_wg = _sizes()[1]
        rt.launch(_kernel("loss", "categorical_rows"), (rows * row_wg,), (row_wg,),
                  y_pred if sparse else y_true, labels if sparse else result, y_pred,
                  grad if need_grad else row_loss, row_loss, result, rows, k, sparse,
                  from_logits, need_grad, lo, hi, np.float32(1.0 / rows))
        _fold("loss", row_loss, out=result)
        total, bad = (float(v) for v in result.get())
        if bad:
            raise ValueError(f"{op}: a label is out of range: class ids must lie in [0, {k}) "
                             f"for y_pred with K={k} classes")
        return total / rows, grad
    n = y_pred.size
    out = _reduce("loss", "pointwise_partial", n,
                  (y_true, y_pred, grad if need_grad else y_pred, _PARTIAL, n, code,
                   from_logits, need_grad, np.float32(delta), lo, hi, np.float32(1.0 / n)))
    return float(out.get()[0]) / n, grad


# -- metrics (opencl/metric.cl) -------------------------------------------------------------

METRIC_MODES = ("binary", "categorical", "sparse")


def _check_threshold(op, threshold):
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'threshold' must be a number, got {threshold!r}") from None
    if math.isnan(thr):
        raise ValueError(f"{op}: 'threshold' must not be NaN")
    # Keras compares with the threshold as a tensor of y_pred's dtype.
    return np.float32(thr)


def _elementwise_pair(op, y_true, y_pred):
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = _input(op, "y_pred", y_pred)
    y_true = _match_target_shape(op, _input(op, "y_true", y_true), y_pred)
    return y_true, y_pred


def _argmax_count(op, y_true, y_pred, sparse, top):
    """Rows whose target is the argmax (top == 0) or within the top ``top`` scores."""
    y_pred = _input(op, "y_pred", y_pred)
    if y_pred.ndim != 2:
        raise ValueError(f"{op}: 'y_pred' must have shape (N, K), got {y_pred.shape}")
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    rows, k = y_pred.shape
    if sparse:
        labels = _sparse_labels(op, y_true, (rows,), k)
        t = y_pred
    else:
        t = _input(op, "y_true", y_true)
        if t.shape != y_pred.shape:
            raise ValueError(f"{op}: one-hot 'y_true' must have the shape of 'y_pred' "
                             f"{y_pred.shape}, got {t.shape}")
    if y_pred.size == 0:
        return 0
    partial_args = (t, labels if sparse else y_pred, y_pred, _PARTIAL, rows, k, bool(sparse),
                    int(top))
    hits, bad = (int(v) for v in _reduce("metric", "argmax_matches_partial", rows,
                                         partial_args, counts=2, dtype=np.int32).get())
    if bad:
        raise ValueError(f"{op}: {bad} label(s) out of range: class ids must lie in [0, {k}) "
                         f"for y_pred with K={k} classes")
    return hits


def accuracy_count(y_true, y_pred, mode, threshold=0.5):
    """Number of correct predictions in the batch (an int); native/metric.pyx's semantics."""
    op = "accuracy_count"
    if mode not in METRIC_MODES:
        raise ValueError(f"{op}: mode must be one of {METRIC_MODES}, got {mode!r}")
    if mode != "binary":
        return _argmax_count(op, y_true, y_pred, mode == "sparse", 0)
    thr = _check_threshold(op, threshold)
    y_true, y_pred = _elementwise_pair(op, y_true, y_pred)
    if y_pred.size == 0:
        return 0
    out = _reduce("metric", "binary_matches_partial", y_pred.size,
                  (y_true, y_pred, _PARTIAL, y_pred.size, thr), dtype=np.int32)
    return int(out.get()[0])


def top_k_count(y_true, y_pred, k=5, sparse=False):
    """Rows whose target scores within the top k (Keras in_top_k: boundary ties count)."""
    op = "top_k_count"
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{op}: 'k' must be an int >= 1, got {k!r}")
    return _argmax_count(op, y_true, y_pred, bool(sparse), min(int(k), _INT32_MAX))


def confusion_counts(y_true, y_pred, threshold=0.5):
    """(tp, fp, fn) as ints: label positive iff y_true != 0, prediction iff y_pred >
    threshold, over every element."""
    op = "confusion_counts"
    thr = _check_threshold(op, threshold)
    y_true, y_pred = _elementwise_pair(op, y_true, y_pred)
    if y_pred.size == 0:
        return 0, 0, 0
    out = _reduce("metric", "confusion_partial", y_pred.size,
                  (y_true, y_pred, _PARTIAL, y_pred.size, thr), counts=3, dtype=np.int32)
    tp, fp, fn = (int(v) for v in out.get())
    return tp, fp, fn
