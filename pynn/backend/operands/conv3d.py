"""Operands of the conv3d ops (native/conv3d.pyx, pynn/backend/opencl/conv3d.py).

Legend: N batch, D/H/W input depth/height/width, C input channels, KD/KH/KW kernel extents,
F filters, G groups (CG = C/G, FG = F/G), DO/HO/WO output extents, PF/PT/PL the leading
pads (front, top, left). Layout NDHWC; Conv3D's kernel (KD, KH, KW, C/G, F), Conv3DTranspose's
(KD, KH, KW, F, C): Keras 3's.

Each op returns the checked arrays and the geometry ``g``: Keras's 'same'/'valid' rules per
axis (common.conv_output_size), the transposed lengths as Conv2DTranspose's
(conv.conv_transpose_output_size).
"""

import operator

from pynn.backend.operands.activation import activation_backward, activation_pair
from pynn.backend.operands.common import (
    INT32_MAX,
    check_count,
    check_shape,
    conv_output_size,
    padding_mode,
)
from pynn.backend.operands.conv import conv_transpose_output_size


def triple(op, name, value):
    """Three positive ints (an int stands for all three axes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        dims = tuple(operator.index(v) for v in value)
    except TypeError:
        dims = ()
    if len(dims) != 3:
        raise ValueError(f"{op}: '{name}' must be an int or 3 ints, got {value!r}")
    if min(dims) < 1 or max(dims) > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be positive ints at most {INT32_MAX}, got "
                         f"{value!r}")
    return dims


def shape5(op, name, shape):
    """A 5-int shape argument (an op's ``input_shape`` / ``kernel_shape``)."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"{op}: '{name}' must be a tuple of 5 ints, got {shape!r}") from None
    if len(dims) != 5 or min(dims) < 0:
        raise ValueError(f"{op}: '{name}' must be 5 non-negative ints, got {shape!r}")
    return dims


def groups_count(op, groups):
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: 'groups' must be a positive int, got {groups!r}")
    return groups


def conv3d_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate, groups=1):
    """Checked Conv3D geometry: x (N, D, H, W, C), kernel (KD, KH, KW, C/G, F)."""
    n, d, h, w, c = input_shape
    kd, kh, kw, kc, f = kernel_shape
    g = groups_count(op, groups)
    if c % g or f % g:
        raise ValueError(f"{op}: groups={g} must divide the input channels ({c}) and the "
                         f"filters ({f})")
    if kc * g != c:
        raise ValueError(f"{op}: kernel (KD, KH, KW, C/groups, F) has {kc} input channels per "
                         f"group but the input has {c} channels in {g} group(s) (input shape "
                         f"{tuple(input_shape)}, kernel shape {tuple(kernel_shape)})")
    if min(kd, kh, kw) < 1:
        raise ValueError(f"{op}: kernel spatial size must be >= 1, got {tuple(kernel_shape)}")
    sd, sh, sw = triple(op, "strides", strides)
    dd, dh, dw = triple(op, "dilation_rate", dilation_rate)
    pad = padding_mode(op, padding)
    pf, do = conv_output_size(d, kd, sd, dd, pad)
    pt, ho = conv_output_size(h, kh, sh, dh, pad)
    pl, wo = conv_output_size(w, kw, sw, dw, pad)
    return dict(N=n, D=d, H=h, W=w, C=c, KD=kd, KH=kh, KW=kw, F=f, G=g, SD=sd, SH=sh, SW=sw,
                DD=dd, DH=dh, DW=dw, PF=pf, PT=pt, PL=pl, DO=do, HO=ho, WO=wo)


def _check_sizes(arrays, op, g):
    """The extents a backend must be able to index."""
    check_count(arrays, op, "input", g["N"] * g["D"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "output", g["N"] * g["DO"] * g["HO"] * g["WO"] * g["F"])
    check_count(arrays, op, "reduction", g["KD"] * g["KH"] * g["KW"] * max(g["C"], g["F"]))


def _output_shape(g):
    return (g["N"], g["DO"], g["HO"], g["WO"], g["F"])


def conv3d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, groups, activation,
                   alpha, op="conv3d_forward"):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=5)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=5, like=x)
    g = conv3d_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate, groups)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def conv3d_backward_input(arrays, dz, kernel, input_shape, strides, padding, dilation_rate,
                          groups):
    """-> (dz, kernel, input_shape, g)."""
    op = "conv3d_backward_input"
    dz = arrays.float_input(op, "dz", dz, ndim=5)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=5, like=dz)
    input_shape = shape5(op, "input_shape", input_shape)
    g = conv3d_geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate, groups)
    check_shape(op, "dz", dz, _output_shape(g))
    _check_sizes(arrays, op, g)
    return dz, kernel, input_shape, g


def conv3d_backward_weight(arrays, x, dz, kernel_shape, strides, padding, dilation_rate,
                           groups):
    """-> (x, dz, kernel_shape, g)."""
    op = "conv3d_backward_weight"
    x = arrays.float_input(op, "x", x, ndim=5)
    dz = arrays.float_input(op, "dz", dz, ndim=5, like=x)
    kernel_shape = shape5(op, "kernel_shape", kernel_shape)
    g = conv3d_geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate, groups)
    check_shape(op, "dz", dz, _output_shape(g))
    _check_sizes(arrays, op, g)
    return x, dz, kernel_shape, g


def conv3d_backward(arrays, dy, x, z, y, kernel, strides, padding, dilation_rate, groups,
                    activation, alpha):
    """-> (name, alpha, dy, x, z, y, kernel, g); z, y as in activation_backward."""
    op = "conv3d_backward"
    name, a, dy, z, y = activation_backward(arrays, dy, z, y, activation, alpha, op)
    x = arrays.float_input(op, "x", x, ndim=5, like=dy)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=5, like=dy)
    g = conv3d_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate, groups)
    check_shape(op, "dy", dy, _output_shape(g))
    _check_sizes(arrays, op, g)
    return name, a, dy, x, z, y, kernel, g


# -- conv3d_transpose: the input gradient of a 'valid' conv3d onto the transposed conv's
# full output, then Keras's window of it (as conv2d_transpose).


def output_padding_triple(op, output_padding, strides):
    """None, or three ints in [0, stride) (Keras refuses output_padding >= strides)."""
    if output_padding is None:
        return None
    if isinstance(output_padding, int) and not isinstance(output_padding, bool):
        output_padding = (output_padding,) * 3
    try:
        pads = tuple(operator.index(v) for v in output_padding)
    except TypeError:
        pads = ()
    if len(pads) != 3:
        raise ValueError(f"{op}: 'output_padding' must be None, an int or 3 ints, got "
                         f"{output_padding!r}")
    for p, s in zip(pads, strides):
        if not 0 <= p < s:
            raise ValueError(f"{op}: 'output_padding' must lie in [0, strides) on each axis "
                             f"(as in Keras), got output_padding={output_padding!r} with "
                             f"strides={tuple(strides)!r}")
    return pads


def conv3d_transpose_geometry(op, input_shape, kernel_shape, strides, padding, output_padding,
                              dilation_rate):
    """Checked Conv3DTranspose geometry: x (N, D, H, W, C), kernel (KD, KH, KW, F, C); the
    full output (DF, HF, WF), its crop (CF, CT, CL) and the output (DO, HO, WO)."""
    n, d, h, w, c = input_shape
    kd, kh, kw, f, kc = kernel_shape
    if kc != c:
        raise ValueError(f"{op}: kernel (KD, KH, KW, filters, in_channels) has {kc} input "
                         f"channels but the input has {c} (input shape {tuple(input_shape)}, "
                         f"kernel shape {tuple(kernel_shape)})")
    if min(kd, kh, kw) < 1:
        raise ValueError(f"{op}: kernel spatial size must be >= 1, got {tuple(kernel_shape)}")
    if min(d, h, w) < 1:
        raise ValueError(f"{op}: the input needs D, H, W >= 1, got shape {tuple(input_shape)}")
    strides = triple(op, "strides", strides)
    dilation = triple(op, "dilation_rate", dilation_rate)
    pad = padding_mode(op, padding)
    pads = output_padding_triple(op, output_padding, strides) or (None, None, None)
    (cf, df, do), (ct, hf, ho), (cl, wf, wo) = (
        conv_transpose_output_size(size, k, s, dil, pad, p)
        for size, k, s, dil, p in zip((d, h, w), (kd, kh, kw), strides, dilation, pads))
    return dict(N=n, D=d, H=h, W=w, C=c, KD=kd, KH=kh, KW=kw, F=f, SD=strides[0],
                SH=strides[1], SW=strides[2], DD=dilation[0], DH=dilation[1], DW=dilation[2],
                DF=df, HF=hf, WF=wf, CF=cf, CT=ct, CL=cl, DO=do, HO=ho, WO=wo)


def _check_transpose_sizes(arrays, op, g):
    check_count(arrays, op, "input", g["N"] * g["D"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "full output", g["N"] * max(g["DF"], g["DO"])
                * max(g["HF"], g["HO"]) * max(g["WF"], g["WO"]) * g["F"])


def conv3d_transpose_forward(arrays, x, kernel, bias, strides, padding, output_padding,
                             dilation_rate, activation, alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    op = "conv3d_transpose_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=5)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=5, like=x)
    g = conv3d_transpose_geometry(op, x.shape, kernel.shape, strides, padding, output_padding,
                                  dilation_rate)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_transpose_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def conv3d_transpose_backward(arrays, dy, x, z, y, kernel, strides, padding, output_padding,
                              dilation_rate, activation, alpha):
    """-> (name, alpha, dy, x, z, y, kernel, g); z, y as in activation_backward."""
    op = "conv3d_transpose_backward"
    name, a, dy, z, y = activation_backward(arrays, dy, z, y, activation, alpha, op)
    x = arrays.float_input(op, "x", x, ndim=5, like=dy)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=5, like=dy)
    g = conv3d_transpose_geometry(op, x.shape, kernel.shape, strides, padding, output_padding,
                                  dilation_rate)
    check_shape(op, "dy", dy, _output_shape(g))
    _check_transpose_sizes(arrays, op, g)
    return name, a, dy, x, z, y, kernel, g
