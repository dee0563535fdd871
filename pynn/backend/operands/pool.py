"""Operands of the pooling ops (native/pool.pyx, pynn/backend/opencl/pool.py).

The window geometry ``g``: N, H, W, C, pool PH/PW, strides SH/SW, leading pads PT/PL and
output HO/WO by Keras's 'same'/'valid' rules (the layer resolves strides=None).
"""

import math
import operator

import numpy as np

from pynn.backend.operands.common import (
    INT32_MAX, check_count, check_shape, conv_output_size, padding_mode, pair, shape4,
)


def pool_geometry(op, input_shape, pool_size, strides, padding):
    n, h, w, c = input_shape
    ph, pw = pair(op, "pool_size", pool_size)
    sh, sw = pair(op, "strides", strides)
    mode = padding_mode(op, padding)
    pt, ho = conv_output_size(h, ph, sh, 1, mode)
    pl, wo = conv_output_size(w, pw, sw, 1, mode)
    return dict(N=n, H=h, W=w, C=c, PH=ph, PW=pw, SH=sh, SW=sw, PT=pt, PL=pl, HO=ho, WO=wo)


def _input_shape(arrays, op, input_shape):
    shape = shape4(op, "input_shape", input_shape)
    check_count(arrays, op, "input_shape", shape[0] * shape[1] * shape[2] * shape[3])
    return shape


def _plane(op, shape):
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{op}: global pooling needs H, W >= 1, got input shape {shape}")


def _windowed_forward(arrays, op, x, pool_size, strides, padding):
    x = arrays.float_input(op, "x", x, ndim=4)
    return x, pool_geometry(op, x.shape, pool_size, strides, padding)


def maxpool2d_forward(arrays, x, pool_size, strides, padding):
    """-> (x, g)."""
    return _windowed_forward(arrays, "maxpool2d_forward", x, pool_size, strides, padding)


def avgpool2d_forward(arrays, x, pool_size, strides, padding):
    """-> (x, g)."""
    return _windowed_forward(arrays, "avgpool2d_forward", x, pool_size, strides, padding)


def maxpool2d_backward(arrays, dy, argmax, input_shape):
    """-> (dy, argmax, input_shape). argmax must point into a non-empty input whenever dy
    holds anything; its values are the kernels' to check."""
    op = "maxpool2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=4)
    argmax = arrays.int_input(op, "argmax", argmax, ndim=4)
    check_shape(op, "argmax", argmax, dy.shape)
    input_shape = _input_shape(arrays, op, input_shape)
    check_shape(op, "dy", dy, (input_shape[0], None, None, input_shape[3]))
    if dy.size and 0 in input_shape:
        raise ValueError(f"{op}: argmax points into an empty input of shape {input_shape}")
    return dy, argmax, input_shape


def avgpool2d_backward(arrays, dy, input_shape, pool_size, strides, padding):
    """-> (dy, g)."""
    op = "avgpool2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=4)
    input_shape = _input_shape(arrays, op, input_shape)
    g = pool_geometry(op, input_shape, pool_size, strides, padding)
    check_shape(op, "dy", dy, (g["N"], g["HO"], g["WO"], g["C"]))
    return dy, g


def _global_forward(arrays, op, x):
    x = arrays.float_input(op, "x", x, ndim=4)
    _plane(op, x.shape)
    return x


def global_avgpool2d_forward(arrays, x):
    """-> x (N, H, W, C) with H, W >= 1."""
    return _global_forward(arrays, "global_avgpool2d_forward", x)


def global_maxpool2d_forward(arrays, x):
    """-> x (N, H, W, C) with H, W >= 1."""
    return _global_forward(arrays, "global_maxpool2d_forward", x)


def global_avgpool2d_backward(arrays, dy, input_shape):
    """-> (dy (N, C), input_shape)."""
    op = "global_avgpool2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=2)
    input_shape = _input_shape(arrays, op, input_shape)
    _plane(op, input_shape)
    check_shape(op, "dy", dy, (input_shape[0], input_shape[3]))
    return dy, input_shape


def global_maxpool2d_backward(arrays, dy, argmax, input_shape):
    """-> (dy (N, C), argmax (N, C), input_shape)."""
    op = "global_maxpool2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=2)
    argmax = arrays.int_input(op, "argmax", argmax, ndim=2)
    check_shape(op, "argmax", argmax, dy.shape)
    input_shape = _input_shape(arrays, op, input_shape)
    _plane(op, input_shape)
    check_shape(op, "dy", dy, (input_shape[0], input_shape[3]))
    return dy, argmax, input_shape


def pool_gradient(arrays, op, dpool, argmax, pooled, y, pool_size, strides, padding,
                  shape=None, like=None):
    """A max pool's backward arrays over its input y, for the ops that take them instead of
    its input gradient -> (dpool, argmax, pooled or None, y, pg), pg the pool's geometry.
    With shape (the pool input's, checked by the caller), y may be None and the floats take
    the dtype of like."""
    if y is None and shape is None:
        raise ValueError(f"{op}: needs y, the pool's input, got None")
    if y is not None:
        y = arrays.float_input(op, "y", y, ndim=4, like=like)
        like, shape = y, tuple(y.shape)
    pg = pool_geometry(op, tuple(shape), pool_size, strides, padding)
    dpool = arrays.float_input(op, "dpool", dpool, ndim=4, like=like)
    check_shape(op, "dpool", dpool, (pg["N"], pg["HO"], pg["WO"], pg["C"]))
    argmax = arrays.int_input(op, "argmax", argmax, ndim=4)
    check_shape(op, "argmax", argmax, dpool.shape)
    if pooled is not None:
        pooled = arrays.float_input(op, "pooled", pooled, ndim=4, like=like)
        check_shape(op, "pooled", pooled, dpool.shape)
    return dpool, argmax, pooled, y, pg


def windows_tile(pg):
    """Whether the pool's windows neither overlap nor reach past the input (each input pixel
    in at most one window, no padding): the ops that make the input gradient from the
    pool's arrays in place then apply."""
    return (pg["PT"] == 0 and pg["PL"] == 0 and pg["SH"] >= pg["PH"] and pg["SW"] >= pg["PW"]
            and (pg["HO"] - 1) * pg["SH"] + pg["PH"] <= pg["H"]
            and (pg["WO"] - 1) * pg["SW"] + pg["PW"] <= pg["W"])


# -- 3-D pooling (MaxPooling3D, AveragePooling3D) -------------------------------
# The geometry ``g`` adds depth: D, pool PD, stride SD, leading pad PF (front) and DO.


def triple(op, name, value):
    """An int or 3 ints, each in [1, INT32_MAX] -> a tuple of 3 ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        dims = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ValueError(f"{op}: '{name}' must be an int or 3 ints, got {value!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{op}: '{name}' must be an int or 3 positive ints, got {value!r}")
    if max(dims) > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be at most {INT32_MAX} (a C int), got {value!r}")
    return dims


def shape5(op, name, shape):
    """A 5-int shape argument (N, D, H, W, C)."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"{op}: '{name}' must be a tuple of 5 ints, got {shape!r}") from None
    if len(dims) != 5 or min(dims) < 0:
        raise ValueError(f"{op}: '{name}' must be 5 non-negative ints (N, D, H, W, C), got "
                         f"{shape!r}")
    return dims


def check_volume(op, shape):
    """argmax holds (d*H + h)*W + w in an int32: a volume past INT32_MAX voxels is refused."""
    if shape[1] * shape[2] * shape[3] > INT32_MAX:
        raise ValueError(f"{op}: a volume of D*H*W = {shape[1] * shape[2] * shape[3]} voxels "
                         f"exceeds the int32 argmax (at most {INT32_MAX})")


def pool3d_geometry(op, input_shape, pool_size, strides, padding):
    n, d, h, w, c = input_shape
    pd, ph, pw = triple(op, "pool_size", pool_size)
    sd, sh, sw = triple(op, "strides", strides)
    mode = padding_mode(op, padding)
    pf, do = conv_output_size(d, pd, sd, 1, mode)
    pt, ho = conv_output_size(h, ph, sh, 1, mode)
    pl, wo = conv_output_size(w, pw, sw, 1, mode)
    return dict(N=n, D=d, H=h, W=w, C=c, PD=pd, PH=ph, PW=pw, SD=sd, SH=sh, SW=sw, PF=pf,
                PT=pt, PL=pl, DO=do, HO=ho, WO=wo)


def _input_shape5(arrays, op, input_shape):
    shape = shape5(op, "input_shape", input_shape)
    check_count(arrays, op, "input_shape", math.prod(shape))
    return shape


def _windowed3d_forward(arrays, op, x, pool_size, strides, padding):
    x = arrays.float_input(op, "x", x, ndim=5)
    check_volume(op, x.shape)
    return x, pool3d_geometry(op, x.shape, pool_size, strides, padding)


def maxpool3d_forward(arrays, x, pool_size, strides, padding):
    """-> (x (N, D, H, W, C), g)."""
    return _windowed3d_forward(arrays, "maxpool3d_forward", x, pool_size, strides, padding)


def avgpool3d_forward(arrays, x, pool_size, strides, padding):
    """-> (x (N, D, H, W, C), g)."""
    return _windowed3d_forward(arrays, "avgpool3d_forward", x, pool_size, strides, padding)


def maxpool3d_backward(arrays, dy, argmax, input_shape):
    """-> (dy, argmax, input_shape); argmax's values are the kernels' to check."""
    op = "maxpool3d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=5)
    argmax = arrays.int_input(op, "argmax", argmax, ndim=5)
    check_shape(op, "argmax", argmax, dy.shape)
    input_shape = _input_shape5(arrays, op, input_shape)
    check_volume(op, input_shape)
    check_shape(op, "dy", dy, (input_shape[0], None, None, None, input_shape[4]))
    if dy.size and 0 in input_shape:
        raise ValueError(f"{op}: argmax points into an empty input of shape {input_shape}")
    return dy, argmax, input_shape


def avgpool3d_backward(arrays, dy, input_shape, pool_size, strides, padding):
    """-> (dy, g)."""
    op = "avgpool3d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=5)
    input_shape = _input_shape5(arrays, op, input_shape)
    g = pool3d_geometry(op, input_shape, pool_size, strides, padding)
    check_shape(op, "dy", dy, (g["N"], g["DO"], g["HO"], g["WO"], g["C"]))
    return dy, g


# -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) ----------
# x (N, *spatial, C) with 1 to 3 spatial axes; the kernels see it as (N, D, H, W, C), the
# missing leading axes of length 1. The geometry ``g``: N, D, H, W, C and the output OD, OH,
# OW; output o of an axis of length L reads [floor(o*L/O), ceil((o+1)*L/O)) (torch's rule).


def _spatial_rank(op, name, ndim):
    if ndim not in (3, 4, 5):
        raise ValueError(f"{op}: '{name}' must be (N, *spatial, C) with 1 to 3 spatial axes "
                         f"(3 to 5 dimensions), got {ndim} dimensions")
    return ndim - 2


def adaptive_output_size(op, output_size, rank):
    """``rank`` positive ints (an int is repeated, as Keras's layers do)."""
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        output_size = (output_size,) * rank
    try:
        sizes = tuple(operator.index(s) for s in output_size)
    except TypeError:
        raise ValueError(f"{op}: 'output_size' must be {rank} positive ints, got "
                         f"{output_size!r}") from None
    if len(sizes) != rank or min(sizes) < 1 or max(sizes) > INT32_MAX:
        raise ValueError(f"{op}: 'output_size' must be {rank} positive ints (one per spatial "
                         f"axis), got {output_size!r}")
    return sizes


def _adaptive_geometry(op, input_shape, output_size):
    spatial = tuple(input_shape[1:-1])
    if min(spatial) < 1:
        raise ValueError(f"{op}: adaptive pooling needs every spatial axis >= 1, got input "
                         f"shape {tuple(input_shape)}")
    pad = 3 - len(spatial)
    d, h, w = (1,) * pad + spatial
    od, oh, ow = (1,) * pad + tuple(output_size)
    return dict(N=input_shape[0], D=d, H=h, W=w, C=input_shape[-1], OD=od, OH=oh, OW=ow)


def _adaptive_input_shape(arrays, op, input_shape):
    try:
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        raise ValueError(f"{op}: 'input_shape' must be a tuple of ints, got "
                         f"{input_shape!r}") from None
    _spatial_rank(op, "input_shape", len(shape))
    if min(shape) < 0:
        raise ValueError(f"{op}: 'input_shape' must be non-negative ints, got {input_shape!r}")
    check_count(arrays, op, "input_shape", math.prod(shape))
    return shape


def _adaptive_forward(arrays, op, x, output_size):
    x = arrays.float_input(op, "x", x)
    rank = _spatial_rank(op, "x", x.ndim)
    g = _adaptive_geometry(op, x.shape, adaptive_output_size(op, output_size, rank))
    check_count(arrays, op, "y", g["N"] * g["OD"] * g["OH"] * g["OW"] * g["C"])
    return x, g


def adaptive_avgpool_forward(arrays, x, output_size):
    """-> (x, g)."""
    return _adaptive_forward(arrays, "adaptive_avgpool_forward", x, output_size)


def adaptive_maxpool_forward(arrays, x, output_size):
    """-> (x, g)."""
    return _adaptive_forward(arrays, "adaptive_maxpool_forward", x, output_size)


def adaptive_avgpool_backward(arrays, dy, input_shape):
    """-> (dy, g); the output size is dy's spatial shape."""
    op = "adaptive_avgpool_backward"
    dy = arrays.float_input(op, "dy", dy)
    input_shape = _adaptive_input_shape(arrays, op, input_shape)
    if dy.ndim != len(input_shape):
        raise ValueError(f"{op}: 'dy' must have the rank of input_shape {input_shape}, got "
                         f"shape {tuple(dy.shape)}")
    g = _adaptive_geometry(op, input_shape, adaptive_output_size(op, dy.shape[1:-1],
                                                                 dy.ndim - 2))
    check_shape(op, "dy", dy, (input_shape[0],) + tuple(dy.shape[1:-1]) + (input_shape[-1],))
    return dy, g


def adaptive_maxpool_backward(arrays, dy, argmax, input_shape):
    """-> (dy, argmax, g); argmax (shaped like dy) holds flat indices d*H*W + h*W + w within
    each (n, c) plane, the kernels' to check."""
    op = "adaptive_maxpool_backward"
    dy = arrays.float_input(op, "dy", dy)
    argmax = arrays.int_input(op, "argmax", argmax)
    check_shape(op, "argmax", argmax, tuple(dy.shape))
    input_shape = _adaptive_input_shape(arrays, op, input_shape)
    if dy.ndim != len(input_shape):
        raise ValueError(f"{op}: 'dy' must have the rank of input_shape {input_shape}, got "
                         f"shape {tuple(dy.shape)}")
    g = _adaptive_geometry(op, input_shape, adaptive_output_size(op, dy.shape[1:-1],
                                                                 dy.ndim - 2))
    check_shape(op, "dy", dy, (input_shape[0],) + tuple(dy.shape[1:-1]) + (input_shape[-1],))
    return dy, argmax, g
