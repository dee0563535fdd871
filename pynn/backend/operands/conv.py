"""Operands of the conv ops (native/conv.pyx, pynn/backend/opencl/conv.py).

Each returns the checked arrays and the geometry ``g`` of ``common.conv_geometry`` (sizes,
strides, dilation, leading pads PT/PL, output HO/WO, Keras's 'same'/'valid' rules).
"""

from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands.activation import activation_backward, activation_pair
from pynn.backend.operands.common import (
    check_count,
    check_shape,
    conv_geometry,
    padding_mode,
    pair,
    shape4,
)


def _check_sizes(arrays, op, g):
    """The implicit-GEMM extents a backend must be able to index."""
    check_count(arrays, op, "input", g["N"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * g["F"])
    check_count(arrays, op, "patch matrix rows", g["N"] * max(g["HO"] * g["WO"], g["H"] * g["W"]))
    check_count(arrays, op, "reduction", g["KH"] * g["KW"] * max(g["C"], g["F"]))


def _output_grad(op, name, a, g):
    check_shape(op, name, a, (g["N"], g["HO"], g["WO"], g["F"]))


def conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, activation,
                   alpha, op="conv2d_forward"):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding, dilation_rate):
    """-> (dz, kernel, input_shape, g)."""
    op = "conv2d_backward_input"
    dz = arrays.float_input(op, "dz", dz, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dz)
    input_shape = shape4(op, "input_shape", input_shape)
    g = conv_geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return dz, kernel, input_shape, g


def conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding, dilation_rate):
    """-> (x, dz, kernel_shape, g)."""
    op = "conv2d_backward_weight"
    x = arrays.float_input(op, "x", x, ndim=4)
    dz = arrays.float_input(op, "dz", dz, ndim=4, like=x)
    kernel_shape = shape4(op, "kernel_shape", kernel_shape)
    g = conv_geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return x, dz, kernel_shape, g


def conv2d_backward(arrays, dy, x, z, y, kernel, strides, padding, dilation_rate, activation,
                    alpha):
    """-> (name, alpha, dy, x, z, y, kernel, g); z, y as in activation_backward."""
    op = "conv2d_backward"
    name, a, dy, z, y = activation_backward(arrays, dy, z, y, activation, alpha, op)
    x = arrays.float_input(op, "x", x, ndim=4, like=dy)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dy)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, "dy", dy, g)
    _check_sizes(arrays, op, g)
    return name, a, dy, x, z, y, kernel, g


def conv2d_pool_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, activation,
                        alpha, pool_size, pool_strides, pool_padding, op="conv2d_pool_forward"):
    """-> (name, alpha, x, kernel, bias or None, g, pg): conv2d_forward's, and the pool's
    geometry over the conv's output (operands.pool.pool_geometry)."""
    from pynn.backend.operands.pool import pool_geometry

    name, a, x, kernel, bias, g = conv2d_forward(arrays, x, kernel, bias, strides, padding,
                                                 dilation_rate, activation, alpha, op)
    pg = pool_geometry(op, (g["N"], g["HO"], g["WO"], g["F"]), pool_size, pool_strides,
                       pool_padding)
    if pg["HO"] <= 0 or pg["WO"] <= 0:
        raise ValueError(f"{op}: pool_size {(pg['PH'], pg['PW'])} is larger than the conv's "
                         f"output {(g['HO'], g['WO'])} under padding='valid'")
    return name, a, x, kernel, bias, g, pg


def conv2d_pool_backward(arrays, dpool, argmax, pooled, x, z, y, kernel, strides, padding,
                         dilation_rate, activation, alpha, pool_size, pool_strides,
                         pool_padding, op="conv2d_pool_backward"):
    """-> (name, alpha, dpool, argmax, pooled or None, x, z, y or None, kernel, g, pg): g the
    conv's geometry, pg the pool's (operands.pool.pool_gradient). y may be None (a forward
    that never made it whole, conv2d_pool_forward): the backends then take a road that
    does not read it, or say it is needed."""
    from pynn.backend.operands.pool import pool_gradient

    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    _check_sizes(arrays, op, g)
    shape = (g["N"], g["HO"], g["WO"], g["F"])
    if y is not None:
        y = arrays.float_input(op, "y", y, ndim=4, like=x)
        _output_grad(op, "y", y, g)
    dpool, argmax, pooled, _, pg = pool_gradient(arrays, op, dpool, argmax, pooled, y,
                                                 pool_size, pool_strides, pool_padding,
                                                 shape=shape, like=x)
    if z is None and name in ACTIVATIONS_NEEDING_INPUT:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'z', got None")
    if z is not None:
        z = arrays.float_input(op, "z", z, like=x)
        check_shape(op, "z", z, shape)
    return name, a, dpool, argmax, pooled, x, z, y, kernel, g, pg


# -- conv2d_transpose (issue 12): the transposed conv as the input gradient of a 'valid' conv
# whose input is the transposed conv's "full" output, then a crop (or zero extension) of it.


def conv_transpose_output_size(n, k, stride, dilation, padding, output_padding=None):
    """Keras 3's transposed-conv length along one axis -> (crop, full, out): the full output
    (n - 1) * stride + k_eff of a 'valid' transposed conv, the first of its rows kept, and
    the output length. Output row o is full row o + crop, zero past the full output (the
    extra rows an output_padding adds at the end). Keras's own rules: the output length of
    ``_get_output_shape_given_tf_padding``, the left pad of
    ``_convert_conv_transpose_padding_args_from_keras_to_jax`` (keras/src/backend/common/
    backend_utils.py), which its torch backend reproduces by the same crop."""
    k_eff = (k - 1) * dilation + 1
    full = (n - 1) * stride + k_eff
    if padding == "valid":
        extra = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        return 0, full, full + extra
    if output_padding is None:
        pad_len, out = stride + k_eff - 2, n * stride
    else:
        pad_len = k_eff + k_eff % 2 - 2 + output_padding
        out = (n - 1) * stride + k_eff % 2 + output_padding
    left_pad = min(pad_len // 2 + pad_len % 2, k_eff - 1)
    return k_eff - 1 - left_pad, full, out


def output_padding_pair(op, output_padding, strides):
    """None, or two ints in [0, stride) (Keras refuses output_padding >= strides)."""
    if output_padding is None:
        return None
    if isinstance(output_padding, int):
        output_padding = (output_padding, output_padding)
    try:
        pads = tuple(int(v) for v in output_padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2:
        raise ValueError(f"{op}: 'output_padding' must be None, an int or a pair of ints, "
                         f"got {output_padding!r}")
    for p, s in zip(pads, strides):
        if not 0 <= p < s:
            raise ValueError(f"{op}: 'output_padding' must lie in [0, strides) on each axis "
                             f"(as in Keras), got output_padding={output_padding!r} with "
                             f"strides={tuple(strides)!r}")
    return pads


def conv_transpose_geometry(op, input_shape, kernel_shape, strides, padding, output_padding,
                            dilation_rate):
    """Checked Conv2DTranspose geometry: x (N, H, W, C), kernel (KH, KW, F, C) (Keras's
    layout); the full output (HF, WF), the crop (CT, CL) and the output (HO, WO)."""
    n, h, w, c = input_shape
    kh, kw, f, kc = kernel_shape
    if kc != c:
        raise ValueError(f"{op}: kernel (KH, KW, filters, in_channels) has {kc} input channels "
                         f"but the input has {c} (input shape {tuple(input_shape)}, kernel "
                         f"shape {tuple(kernel_shape)})")
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel spatial size must be >= 1, got {tuple(kernel_shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"{op}: the input needs H, W >= 1, got shape {tuple(input_shape)}")
    sh, sw = pair(op, "strides", strides)
    dh, dw = pair(op, "dilation_rate", dilation_rate)
    pad = padding_mode(op, padding)
    op_h, op_w = output_padding_pair(op, output_padding, (sh, sw)) or (None, None)
    ct, hf, ho = conv_transpose_output_size(h, kh, sh, dh, pad, op_h)
    cl, wf, wo = conv_transpose_output_size(w, kw, sw, dw, pad, op_w)
    return dict(N=n, H=h, W=w, C=c, KH=kh, KW=kw, F=f, SH=sh, SW=sw, DH=dh, DW=dw,
                HF=hf, WF=wf, CT=ct, CL=cl, HO=ho, WO=wo)


def _check_transpose_sizes(arrays, op, g):
    check_count(arrays, op, "input", g["N"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "full output",
                g["N"] * max(g["HF"], g["HO"]) * max(g["WF"], g["WO"]) * g["F"])


def conv2d_transpose_forward(arrays, x, kernel, bias, strides, padding, output_padding,
                             dilation_rate, activation, alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    op = "conv2d_transpose_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = conv_transpose_geometry(op, x.shape, kernel.shape, strides, padding, output_padding,
                                dilation_rate)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_transpose_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def conv2d_transpose_backward(arrays, dy, x, z, y, kernel, strides, padding, output_padding,
                              dilation_rate, activation, alpha):
    """-> (name, alpha, dy, x, z, y, kernel, g); z, y as in activation_backward."""
    op = "conv2d_transpose_backward"
    name, a, dy, z, y = activation_backward(arrays, dy, z, y, activation, alpha, op)
    x = arrays.float_input(op, "x", x, ndim=4, like=dy)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dy)
    g = conv_transpose_geometry(op, x.shape, kernel.shape, strides, padding, output_padding,
                                dilation_rate)
    check_shape(op, "dy", dy, (g["N"], g["HO"], g["WO"], g["F"]))
    _check_transpose_sizes(arrays, op, g)
    return name, a, dy, x, z, y, kernel, g
